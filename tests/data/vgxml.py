"""Reads memcheck's XML (valgrind --xml=yes, protocol 4) with Python's own XML parser,
taking the fields that tools reading valgrind's XML take, and prints them as JSON.

    python3 vgxml.py FILE.xml

Fails (non-zero status, a message on stderr) on a document that is not well-formed
XML or is not valgrind's memcheck output of protocol 4.
"""
import json
import sys
import xml.etree.ElementTree as ET


def frame(f):
    fields = {}
    for name in ("ip", "obj", "fn", "dir", "file", "line"):
        value = f.findtext(name)
        if value is not None:
            fields[name] = int(value) if name == "line" else value
    return fields


def error(e):
    out = {
        "unique": e.findtext("unique"),
        "tid": int(e.findtext("tid")),
        "kind": e.findtext("kind"),
        "auxwhat": [a.text for a in e.findall("auxwhat")],
        "stacks": [[frame(f) for f in s.findall("frame")] for s in e.findall("stack")],
    }
    xwhat = e.find("xwhat")
    if xwhat is not None:
        out["what"] = xwhat.findtext("text")
        out["leakedbytes"] = int(xwhat.findtext("leakedbytes"))
        out["leakedblocks"] = int(xwhat.findtext("leakedblocks"))
    else:
        out["what"] = e.findtext("what")
    supp = e.find("suppression")
    if supp is not None:
        out["suppression"] = supp.findtext("rawtext").strip()
    return out


def main(path):
    root = ET.parse(path).getroot()
    if root.tag != "valgrindoutput":
        sys.exit(f"{path}: the root element is <{root.tag}>, not <valgrindoutput>")
    if root.findtext("protocolversion") != "4" or root.findtext("protocoltool") != "memcheck":
        sys.exit(f"{path}: not memcheck's protocol 4")
    doc = {
        "pid": int(root.findtext("pid")),
        "tool": root.findtext("tool"),
        "argv": [a.text for a in root.find("args/argv")],
        "states": [s.findtext("state") for s in root.findall("status")],
        "errors": [error(e) for e in root.findall("error")],
        "errorcounts": {
            p.findtext("unique"): int(p.findtext("count"))
            for p in root.findall("errorcounts/pair")
        },
        "suppcounts": {
            p.findtext("name"): int(p.findtext("count")) for p in root.findall("suppcounts/pair")
        },
    }
    json.dump(doc, sys.stdout, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
