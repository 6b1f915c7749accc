#!/usr/bin/env python3
"""Makes libLibTorchSharp.so load on a libstdc++ older than the one it was linked against (Debian 12: GLIBCXX_3.4.30).

TorchSharp's libLibTorchSharp.so requires GLIBCXX_3.4.32 for one symbol, std::ios_base_library_init, which it never
calls. This marks that version requirement weak (VER_FLG_WEAK in its Elf64_Vernaux entry of .gnu.version_r), so the
dynamic loader accepts a libstdc++ without it. Usage: weak-glibcxx.py FILE...

Patches the given copy (a build output's, never the NuGet cache's: the file is replaced, not written through, so a
hard link into the cache is left alone). A no-op when already patched or when this system's libstdc++ has the version.
Then checks that `ldd` finds every library and version. Exit 0 when the file loads, 1 otherwise."""
import os, struct, subprocess, sys, tempfile

VERSION = b"GLIBCXX_3.4.32"
VER_FLG_WEAK = 0x2
SHT_GNU_VERNEED = 0x6FFFFFFE


def system_has_version():
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    libs = [l.split("=>")[-1].strip() for l in out.splitlines() if "libstdc++.so.6 " in l and "x86-64" in l]
    return any(VERSION in open(p, "rb").read() for p in libs if os.path.exists(p))


def vernaux_flags_offset(data):
    """File offset of vna_flags of the Vernaux entry naming VERSION, or None."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for _, sh_type, _, _, offset, _, link, info, _, _ in sections:
        if sh_type != SHT_GNU_VERNEED:
            continue
        strtab = sections[link][4]
        entry = offset
        for _ in range(info):  # sh_info: the number of Verneed entries
            _, cnt, _, aux, nxt = struct.unpack_from("<HHIII", data, entry)
            a = entry + aux
            for _ in range(cnt):
                _, _, _, name, anext = struct.unpack_from("<IHHII", data, a)
                end = data.index(b"\0", strtab + name)
                if data[strtab + name:end] == VERSION:
                    return a + 4
                a += anext
            entry += nxt
    return None


def patch(path):
    data = bytearray(open(path, "rb").read())
    at = vernaux_flags_offset(data)
    if at is None:
        return f"{path}: does not require {VERSION.decode()}; nothing to do"
    flags, = struct.unpack_from("<H", data, at)
    if flags & VER_FLG_WEAK:
        return f"{path}: {VERSION.decode()} already weak"
    struct.pack_into("<H", data, at, flags | VER_FLG_WEAK)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, os.stat(path).st_mode)
    os.replace(tmp, path)
    return f"{path}: marked {VERSION.decode()} weak"


def loads(path):
    out = subprocess.run(["ldd", path], capture_output=True, text=True, env={**os.environ, "LD_LIBRARY_PATH": os.path.dirname(os.path.abspath(path))})
    missing = [l.strip() for l in (out.stdout + out.stderr).splitlines() if "not found" in l and "weak version" not in l]  # a weak one only warns
    for m in missing:
        print(f"{path}: {m}", file=sys.stderr)
    return out.returncode == 0 and not missing


def main(paths):
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    needed = not system_has_version()
    ok = True
    for path in paths:
        if not os.path.isfile(path):
            print(f"{path}: no such file", file=sys.stderr)
            return 1
        print(patch(path) if needed else f"{path}: this system's libstdc++ has {VERSION.decode()}; left as is")
        ok &= loads(path)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
