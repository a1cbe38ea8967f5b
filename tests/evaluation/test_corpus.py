"""`load_text` on files: UTF-8 only, with the fix named for anything else."""
import pytest

from shadowattn_tvm.evaluation.corpus import load_text


def test_utf8_text_is_read_with_unix_line_ends(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffHéllo 🌍\r\nline two\rthree\n".encode())
    assert load_text(str(path)) == "Héllo 🌍\nline two\nthree\n"  # BOM dropped, CRLF and CR become LF
    (tmp_path / "empty.txt").write_bytes(b"")
    assert load_text(str(tmp_path / "empty.txt")) == ""


@pytest.mark.parametrize("data,message", [
    ("café au lait".encode("latin-1"),
     r"^text file \S+ is not UTF-8 \(invalid continuation byte at byte 3\): convert it, e\.g\. "
     r"`iconv -f latin1 -t utf-8 \S+ > out\.txt`, and pass the result$"),
    ("hi".encode("utf-16"),
     r"^text file \S+ is binary \(a NUL byte at byte 3\): pass a UTF-8 text file \(convert UTF-16 text with "
     r"`iconv -f utf-16 -t utf-8`\)$"),
])
def test_files_that_are_not_utf8_text_are_refused(tmp_path, data, message):
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        load_text(str(path))


def test_a_directory_and_a_missing_file_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"^text file \S+ is a directory: pass a text file inside it "
                                         r"\(or austen:<novel> / pydocs\)$"):
        load_text(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no text file"):
        load_text(str(tmp_path / "nope.txt"))
