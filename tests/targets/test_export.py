import pytest

from shadowattn_tvm.targets.export import elf_machine


@pytest.mark.parametrize("machine,name", [(0x3E, "x86_64"), (0xB7, "aarch64"), (0xA4, "hexagon")])
def test_elf_machine_reads_the_header(tmp_path, machine, name):
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + (3).to_bytes(2, "little") + machine.to_bytes(2, "little")
    path = tmp_path / "lib.so"
    path.write_bytes(header + bytes(44))
    assert elf_machine(path) == name


def test_elf_machine_rejects_other_files(tmp_path):
    path = tmp_path / "x.so"
    path.write_text("not an elf file at all")
    with pytest.raises(ValueError, match="not an ELF"):
        elf_machine(path)
