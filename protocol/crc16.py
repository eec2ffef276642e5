"""CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor; check 0x29B1).

Table driven so it runs on the board; the host may use crcmod's C extension instead (see
``protocol.framing.crc16``) and the tests prove the two agree on random data.
"""

POLY = 0x1021
INIT = 0xFFFF


def _make_table():
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ POLY) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


TABLE = _make_table()


def crc16(data, crc=INIT):
    """CRC of ``data`` (bytes-like), optionally continuing from ``crc``."""
    table = TABLE
    for b in data:
        crc = ((crc << 8) & 0xFF00) ^ table[(crc >> 8) ^ b]
    return crc
