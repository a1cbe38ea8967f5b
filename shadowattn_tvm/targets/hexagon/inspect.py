"""ELF and assembly inspection of Hexagon graph libraries (no binutils needed)."""
from __future__ import annotations

import re
import struct
from pathlib import Path


def _sections(data: bytes):
    """[(name, type, flags, offset, size, link, entsize)] of a little-endian ELF32 file."""
    if data[:4] != b"\x7fELF" or data[4] != 1:
        raise ValueError("not an ELF32 file")
    shoff, = struct.unpack_from("<I", data, 0x20)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
    raw = [struct.unpack_from("<10I", data, shoff + i * shentsize) for i in range(shnum)]
    names = raw[shstrndx][4]
    name = lambda off: data[names + off:data.index(b"\0", names + off)].decode()  # noqa: E731
    return [(name(s[0]), s[1], s[2], s[4], s[5], s[6], s[9]) for s in raw]


def code_bytes(obj: bytes) -> int:
    """Bytes of an object's allocated sections (SHF_ALLOC): code, constants, data; no debug info."""
    return sum(size for _n, kind, flags, _o, size, _l, _e in _sections(obj) if flags & 0x2 and kind != 0)


def dynamic_symbols(path, *, defined: bool = True) -> set:
    """Names of the symbols a shared object defines (or, `defined=False`, imports) in .dynsym."""
    data = Path(path).read_bytes()
    sections = _sections(data)
    dynsym = next(s for s in sections if s[1] == 11)  # SHT_DYNSYM
    strtab = sections[dynsym[5]][3]
    out = set()
    for i in range(1, dynsym[4] // 16):
        st_name, _value, _size, _info, _other, shndx = struct.unpack_from("<IIIBBH", data, dynsym[3] + 16 * i)
        if (shndx != 0) == defined:
            out.add(data[strtab + st_name:data.index(b"\0", strtab + st_name)].decode())
    return out


R_HEX_B22_PCREL = 1  # a direct call: +-8 MiB, no constant extender


def short_calls(obj: bytes) -> list:
    """Symbols an object calls with R_HEX_B22_PCREL: calls a linker cannot resolve once a library
    outgrows +-8 MiB (objects built with `+long-calls` have none)."""
    sections = _sections(obj)
    out = []
    for _name, kind, _flags, offset, size, link, _entsize in sections:
        if kind != 4:  # SHT_RELA
            continue
        symtab = sections[link]
        strtab = sections[symtab[5]][3]
        for i in range(size // 12):
            _offset, info, _addend = struct.unpack_from("<IIi", obj, offset + 12 * i)
            if info & 0xFF == R_HEX_B22_PCREL:
                st_name, = struct.unpack_from("<I", obj, symtab[3] + 16 * (info >> 8))
                out.append(obj[strtab + st_name:obj.index(b"\0", strtab + st_name)].decode())
    return out


def asm_function(asm: str, function: str) -> str:
    """The assembly of one function (from its label to its `.Lfunc_end`)."""
    match = re.search(rf"^{re.escape(function)}:\s*$(.*?)^\.Lfunc_end", asm, re.S | re.M)
    if match is None:
        raise KeyError(f"function {function!r} not in the assembly")
    return match.group(1)


def hvx_loop_macs(asm: str, name: str) -> int:
    """vrmpy instructions inside loops (hardware `loopN`...`:endloopN` or backward jumps) of the
    graph's compute function: the check that Q·Kᵀ's inner loop runs on HVX integer MACs."""
    body = "\n".join(asm_function(asm, f) for f in (f"{name}_compute_", f"__tvm_ffi_{name}")
                     if re.search(rf"^{re.escape(f)}:", asm, re.M))
    lines = body.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.LBB\w+):", line))}
    spans = []
    for i, line in enumerate(lines):
        for m in re.finditer(r"loop(\d)\(#*(\.LBB\w+)", line):  # hardware loop: label .. :endloopN
            start = labels.get(m.group(2))
            end = next((j for j in range(i, len(lines)) if f":endloop{m.group(1)}" in lines[j]), None)
            if start is not None and end is not None:
                spans.append((start, end))
        for m in re.finditer(r"jump(?::\w+)?\s+(\.LBB\w+)", line):  # software loop: backward branch
            if labels.get(m.group(1), len(lines)) < i:
                spans.append((labels[m.group(1)], i))
    inside = {j for start, end in spans for j in range(start, end + 1)}
    return sum(1 for j, line in enumerate(lines) if j in inside and re.search(r"\bvrmpy\(", line))
