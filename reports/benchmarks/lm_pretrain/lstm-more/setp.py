"""setp.py SECTION ARCH KEY VALUE: set params.yaml's SECTION.ARCH.KEY (a top-level key of the
arch block, or model.<k> inside its inline dict) in place, keeping the comments."""
import re
import sys
from pathlib import Path

section, arch, key, value = sys.argv[1:5]
p = Path("params.yaml")
s = p.read_text()
i = s.index(f"\n{section}:\n")
i = s.index(f"\n  {arch}:\n", i)
end = re.compile(r"\n  \S|\n\S").search(s, i + 3)
block_end = end.start() if end else len(s)
block = s[i:block_end]
if key.startswith("model."):
    k = key.split(".", 1)[1]
    new, n = re.subn(rf"(\b{k}: )[^,}}]+", rf"\g<1>{value}", block, count=1)
else:
    new, n = re.subn(rf"(\n    {key}: )[^#\n]*?([ \t]*(#.*)?)(?=\n|$)", rf"\g<1>{value}\g<2>", block, count=1)
if n != 1:
    sys.exit(f"{section}.{arch}.{key} not found")
p.write_text(s[:i] + new + s[block_end:])
