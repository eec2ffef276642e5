"""picostim: host tool for the picostim RP2040 pulse generator."""
