"""Field types shared by the schema families: validated names, tags and UTC timestamps."""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

# EC2's tag alphabet: letters, digits, spaces and _ . : / = + - @. Nothing that means something
# to XML, shells or YAML (no < > & ' " ` $ ; | { } # newline).
TAG_CHARS = r"[A-Za-z0-9 _.:/=+\-@]"
TAG_KEY_RE = re.compile(rf"^{TAG_CHARS}{{1,128}}$")
TAG_VALUE_RE = re.compile(rf"^{TAG_CHARS}{{0,256}}$")

ResourceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
ImageName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._()/@-]{0,127}$")]
AccountName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
TypeName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,15}\.[a-z0-9]{1,16}$")]
Architecture = Annotated[str, StringConstraints(pattern=r"^x86_64$")]
ImageFormat = Annotated[str, StringConstraints(pattern=r"^qcow2$")]
# The console line a guest prints when booted: plain printable characters only.
ReadyMarker = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 _.:=+@-]{1,128}$")]
