"""Write a copy of a shared library whose `cpuid` instructions trap (`int3; nop`) for cpuid_mask.c to answer.

    python patch_cpuid.py IN.so OUT.so

The instructions are found by disassembly (objdump), not by a byte search, so no `0f a2` inside another
instruction's bytes is touched. Prints how many were patched; a library with none is an error.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

_SECTION = re.compile(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s", re.M)
_CPUID = re.compile(r"^\s*([0-9a-f]+):\s+0f a2\s+cpuid\s*$", re.M)


def cpuid_offsets(lib: Path) -> list[int]:
    """File offsets of every cpuid instruction in the executable sections of `lib`."""
    headers = subprocess.run(["objdump", "-h", str(lib)], capture_output=True, text=True, check=True).stdout
    sections = [(int(vma, 16), int(size, 16), int(off, 16)) for _, size, vma, off in _SECTION.findall(headers)]
    listing = subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    offsets = []
    for match in _CPUID.finditer(listing):
        address = int(match.group(1), 16)
        vma, size, off = next(s for s in sections if s[0] <= address < s[0] + s[1])
        offsets.append(address - vma + off)
    return offsets


def main() -> int:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    data = bytearray(source.read_bytes())
    offsets = cpuid_offsets(source)
    if not offsets:
        print(f"no cpuid instruction in {source}", file=sys.stderr)
        return 2
    for offset in offsets:
        assert data[offset:offset + 2] == b"\x0f\xa2", hex(offset)
        data[offset:offset + 2] = b"\xcc\x90"
    target.write_bytes(bytes(data))
    print(f"{len(offsets)} cpuid instructions patched in {source.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
