"""Build step that ships the C sources inside the package: bpf/ becomes ebpflb/_bpf.

bcc compiles bpf/ebpflb_tc.c when the agent starts, so an installed ebpflb needs the C
sources beside its Python code. They stay at the top of the repository (bpf/, where the
README and DESIGN name them), and build_py copies them into the built package, where
loader.bpf_dir() finds them. The alternatives do not work for both kinds of install: a
package-dir mapping ("ebpflb._bpf" = "bpf") is ignored while packages are found
automatically (it would need every subpackage listed by hand), and a symlink
ebpflb/_bpf -> ../bpf is followed by some archivers and copied as a link by others.
An editable install builds nothing here: bpf_dir() then uses the checkout's bpf/.

The one native module, ebpflb._maglevfill (ebpflb/_maglevfill.c: the Maglev walks and
fill in C, and the writer that makes, maps and fills the kernel's tables), is built by
every install, editable ones too (beside its source). It needs a C compiler and the
Python and Linux headers (Debian: gcc, python3-dev, which brings linux-libc-dev); it
is optional so that an install without them still works: ebpflb.maglev then fills its
tables in Python, about 30x slower, and the map writer makes and copies each table
itself. The image (deploy/Containerfile) and the unit tests insist on it. A second,
ebpflb._readback (ebpflb/_readback.c: read_state's bulk steps, the pinned maps read
back on a restart), is built the same way and optional too: without it
ebpflb.dataplane.bpf.maps does those steps in Python (about half the speed). So is a
third, ebpflb._fullsync (ebpflb/_fullsync.c: a full sync's per-Service and per-frontend
steps, see ebpflb.sources.translate and ebpflb.plan), without which they run in Python
(about half the speed).

Everything else is configured in pyproject.toml; MANIFEST.in puts bpf/ in the sdist.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

BPF_SOURCES = ("*.c", "lib/*.h")


class BuildPyWithBpf(build_py):
    """build_py, plus bpf/'s C sources copied to <build>/ebpflb/_bpf."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        source = Path("bpf")
        target = Path(self.build_lib) / "ebpflb" / "_bpf"
        for pattern in BPF_SOURCES:
            for path in sorted(source.glob(pattern)):
                dest = target / path.relative_to(source)
                self.mkpath(str(dest.parent))
                self.copy_file(str(path), str(dest))


MAGLEV_FILL = Extension(
    "ebpflb._maglevfill",
    sources=["ebpflb/_maglevfill.c"],
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
    optional=True,
)

READBACK = Extension(
    "ebpflb._readback",
    sources=["ebpflb/_readback.c"],
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
    optional=True,
)

PLANCHECK = Extension(
    "ebpflb._fullsync",
    sources=["ebpflb/_fullsync.c"],
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
    optional=True,
)

setup(cmdclass={"build_py": BuildPyWithBpf}, ext_modules=[MAGLEV_FILL, READBACK, PLANCHECK])
