"""Writing a series of DICOM files that differ only in a few elements, fast.

pydicom's `save_as` encodes the whole dataset for every file (~25 ms for a 512 x 512 CT
slice, a third of the phantom's cost per study). `SeriesEncoder` encodes the elements
shared by the series once, splits them at the per-file elements, and per file encodes only
those and the file meta; the bytes equal what `Dataset.save_as(path,
enforce_file_format=True)` writes (tested).
"""

from __future__ import annotations

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
from pydicom.tag import Tag

PREAMBLE = b"\x00" * 128 + b"DICM"


def _buffer() -> DicomBytesIO:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    return buf


def encode_elements(elements) -> bytes:
    """Explicit VR little endian bytes of DataElements (written in tag order)."""
    ds = Dataset()
    for element in elements:
        ds.add(element)
    buf = _buffer()
    write_dataset(buf, ds)
    return buf.getvalue()


class SeriesEncoder:
    """Encodes files of one series: a template dataset plus per-file elements.

    Args:
      template: pydicom Dataset with `file_meta`, holding every element the files share
        (explicit VR little endian).
      per_file: (keyword, VR) of the elements each file sets; not in `template`.
    """

    def __init__(self, template: Dataset, per_file):
        self.meta = template.file_meta
        self.per_file = [(Tag(keyword), vr) for keyword, vr in per_file]
        cuts = sorted(tag for tag, _ in self.per_file)
        parts = [[] for _ in range(len(cuts) + 1)]
        for element in template:
            parts[sum(element.tag > cut for cut in cuts)].append(element)
        self.static = [encode_elements(part) for part in parts]
        self.order = sorted(range(len(self.per_file)), key=lambda i: self.per_file[i][0])

    def encode(self, sop_instance_uid, values) -> bytes:
        """The bytes of one file: `values` for the per-file elements, in their order."""
        self.meta.MediaStorageSOPInstanceUID = sop_instance_uid
        buf = _buffer()
        buf.write(PREAMBLE)
        write_file_meta_info(buf, self.meta, enforce_standard=True)
        buf.write(self.static[0])
        for j, i in enumerate(self.order):
            tag, vr = self.per_file[i]
            write_data_element(buf, DataElement(tag, vr, values[i]))
            buf.write(self.static[j + 1])
        return buf.getvalue()
