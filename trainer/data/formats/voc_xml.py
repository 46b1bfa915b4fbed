"""One Pascal VOC annotation file (also NEU-DET's) <-> an :class:`Annotation`.

VOC coordinates are 1-based pixel indices, both ends inclusive: a box on the first pixel
column is ``xmin=1, xmax=1``. In our convention (pixel edges from 0, see
``trainer.data.dataset``) that is ``x1 = xmin - 1, x2 = xmax`` (as detectron2 reads VOC).
The reader accepts integers or floats; the writer keeps up to 3 decimals, so integer
boxes stay integers and others round-trip within 0.0005 px.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from trainer.data.dataset import Sample
from trainer.data.formats import _xml
from trainer.data.formats._common import guess_names, make_sample, relative
from trainer.data.problems import Kind, Reporter


@dataclass
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2, our convention
    line: int  # of <bndbox>
    name_line: int = 0


@dataclass
class Annotation:
    filename: str
    width: int
    height: int
    objects: list[VocObject] = field(default_factory=list)
    filename_line: int = 0


def read(path: Path, report: Reporter) -> Annotation | None:
    """Parse one annotation file; reports problems and returns None if it is unusable.

    An object whose box cannot be parsed is reported and left out.
    """
    try:
        root = _xml.parse(path.read_bytes())
    except _xml.XmlError as exc:
        report(path, exc.line, Kind.MALFORMED_XML, str(exc))
        return None
    if root.tag != "annotation":
        report(
            path, root.line, Kind.MALFORMED_XML, f"root element is <{root.tag}>, not <annotation>"
        )
        return None
    size = root.find("size")
    try:
        width = int(float(size.findtext("width")))
        height = int(float(size.findtext("height")))
        if width <= 0 or height <= 0:
            raise ValueError
    except (AttributeError, TypeError, ValueError):
        line = size.line if size is not None else root.line
        report(path, line, Kind.MALFORMED_XML, "missing or invalid <size><width>/<height>")
        return None
    filename = root.find("filename")
    annotation = Annotation(
        filename.text.strip() if filename is not None else "",
        width,
        height,
        filename_line=filename.line if filename is not None else root.line,
    )
    for obj in root.findall("object"):
        name = obj.findtext("name")
        bndbox = obj.find("bndbox")
        if not name or bndbox is None:
            report(path, obj.line, Kind.MALFORMED_XML, "<object> without <name> or <bndbox>")
            continue
        try:
            xmin, ymin, xmax, ymax = (
                float(bndbox.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")
            )
        except (TypeError, ValueError):
            report(
                path,
                bndbox.line,
                Kind.MALFORMED_XML,
                "<bndbox> needs numeric xmin, ymin, xmax, ymax",
            )
            continue
        box = (xmin - 1, ymin - 1, xmax, ymax)
        annotation.objects.append(VocObject(name, box, bndbox.line, obj.find("name").line))
    return annotation


def to_samples(
    records: list[tuple[Path, Annotation, Path]],
    names: list[str] | None,
    root: Path,
    report: Reporter,
) -> tuple[list[Sample], list[str]]:
    """Samples from ``(xml file, annotation, image file)`` records, and the class names.

    Without a class list (``names`` None) the names are those the files use, in NEU-DET's
    order when they are NEU-DET's, else sorted; with one, other names are unknown classes.
    Returns one sample per record, in record order, so callers can regroup them by split.
    """
    if names is None:
        names = guess_names(o.name for _, a, _ in records for o in a.objects)
    index = {name: i for i, name in enumerate(names)}
    samples = []
    for xml_file, annotation, image in records:
        items = []
        for obj in annotation.objects:
            if obj.name not in index:
                report(
                    xml_file,
                    obj.name_line,
                    Kind.UNKNOWN_CLASS,
                    f"class {obj.name!r} is not one of {names}",
                )
                continue
            items.append((index[obj.name], obj.box, obj.line))
        sample = make_sample(
            relative(image, root), annotation.width, annotation.height, items, xml_file, report
        )
        samples.append(sample)
    return samples, names


def render(annotation: Annotation, folder: str, depth: int) -> str:
    """The XML text of one annotation, in the layout VOC and NEU-DET files use."""
    lines = [
        "<annotation>",
        f"\t<folder>{escape(folder)}</folder>",
        f"\t<filename>{escape(annotation.filename)}</filename>",
        "\t<size>",
        f"\t\t<width>{annotation.width}</width>",
        f"\t\t<height>{annotation.height}</height>",
        f"\t\t<depth>{depth}</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for obj in annotation.objects:
        x1, y1, x2, y2 = obj.box
        lines += [
            "\t<object>",
            f"\t\t<name>{escape(obj.name)}</name>",
            "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>",
            "\t\t<difficult>0</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{_num(x1 + 1)}</xmin>",
            f"\t\t\t<ymin>{_num(y1 + 1)}</ymin>",
            f"\t\t\t<xmax>{_num(x2)}</xmax>",
            f"\t\t\t<ymax>{_num(y2)}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    text = f"{float(value):.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
