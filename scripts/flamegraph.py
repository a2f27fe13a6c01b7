#!/usr/bin/env python3
"""A flame graph (SVG) from `perf script` output, for the hot path section of BENCHMARKS.md.

    perf record -F 997 --call-graph dwarf -p PID -o perf.data -- sleep 10
    perf script -i perf.data | swift demangle --simplified | scripts/flamegraph.py "title" > docs/flame.svg

Stacks are folded as in Brendan Gregg's stackcollapse-perf.pl (root first; frames below a thread's entry
point dropped), then drawn with one box per frame, its width the share of the samples that passed through
it. Colours tell the code apart at a glance: our modules, SwiftNIO/AsyncHTTPClient, PostgresNIO, the Swift
runtime and concurrency, the kernel and libc.
"""
import html
import re
import sys
from collections import defaultdict

WIDTH, ROW, FONT, MIN_WIDTH = 1400, 17, 11, 1.0


def frames_of(block):
    """The frames of one sample, root first, each as 'symbol' (module appended when unknown)."""
    frames = []
    for line in block[1:]:
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        symbol = parts[1]
        module = ""
        match = re.match(r"(.*) \(([^)]*)\)$", symbol)
        if match:
            symbol, module = match.group(1), match.group(2)
        symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol).strip()
        library = module.rsplit("/", 1)[-1]
        if symbol in ("[unknown]", ""):
            symbol = f"[{library or 'unknown'}]"
        if "kernel" in library:
            symbol = "[k] " + symbol
        elif library.startswith("libswift") or library.startswith("libdispatch"):
            symbol = "[rt] " + symbol
        elif library.startswith("libc.") or library.startswith("ld-linux"):
            symbol = "[libc] " + symbol
        frames.append(symbol)
    frames.reverse()
    return frames


def fold(text):
    stacks = defaultdict(int)
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if len(lines) < 2:
            continue
        command = lines[0].split()[0]
        stacks[tuple([command] + frames_of(lines))] += 1
    return stacks


def colour(name):
    lower = name.lower()
    if name.startswith("[libc]"):
        return "rgb(220,90,80)"
    if any(key in name for key in ("Enrich", "Nymble", "enrich", "Throttle", "TokenStore", "ClaimedRows",
                                   "ResultBuffer", "ResultWriter", "ItemProcessor", "Pipeline", "CommerceContext",
                                   "HTTP1")):
        return "rgb(230,140,60)"
    if any(key in name for key in ("NIO", "HTTPClient", "AsyncHTTPClient", "llhttp", "c_nio")):
        return "rgb(90,150,220)"
    if "Postgres" in name:
        return "rgb(120,190,120)"
    if name.startswith("[k]"):
        return "rgb(200,200,80)"
    if name.startswith("[rt]") or any(key in lower for key in ("swift_task", "continuation", "executor")):
        return "rgb(200,110,190)"
    return "rgb(220,90,80)"


def render(stacks, title):
    tree = {}
    total = sum(stacks.values())
    for stack, count in stacks.items():
        node = tree
        for frame in stack:
            entry = node.setdefault(frame, [0, {}])
            entry[0] += count
            node = entry[1]
    depth = max((len(s) for s in stacks), default=1)
    height = (depth + 3) * ROW
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="monospace" font-size="{FONT}">',
           f'<rect width="100%" height="100%" fill="#fafafa"/>',
           f'<text x="{WIDTH / 2}" y="{ROW}" text-anchor="middle" font-size="{FONT + 3}">'
           f'{html.escape(title)} ({total} samples)</text>']

    def draw(node, x, level):
        for name, (count, children) in sorted(node.items()):
            width = count / total * WIDTH
            if width >= MIN_WIDTH:
                y = height - (level + 1) * ROW
                share = 100 * count / total
                label = f"{name} ({share:.1f}%)"
                out.append(f'<g><title>{html.escape(label)}</title><rect x="{x:.1f}" y="{y}" width="{width:.1f}" '
                           f'height="{ROW - 1}" fill="{colour(name)}" rx="2"/>')
                chars = int(width / (FONT * 0.6))
                if chars >= 4:
                    text = label if len(label) <= chars else label[:chars - 2] + ".."
                    out.append(f'<text x="{x + 2:.1f}" y="{y + ROW - 5}">{html.escape(text)}</text>')
                out.append("</g>")
                draw(children, x, level + 1)
            x += width

    draw(tree, 0, 0)
    out.append("</svg>")
    return "\n".join(out)


CATEGORIES = {
    "rgb(230,140,60)": "enrich", "rgb(90,150,220)": "SwiftNIO / AsyncHTTPClient", "rgb(120,190,120)": "PostgresNIO",
    "rgb(200,110,190)": "Swift runtime / concurrency", "rgb(200,200,80)": "kernel", "rgb(220,90,80)": "libc / other",
}


def summary(stacks):
    """Self time (the sample's innermost frame) by kind of code, as shares of all samples."""
    total = sum(stacks.values())
    shares = defaultdict(int)
    for stack, count in stacks.items():
        shares[CATEGORIES[colour(stack[-1])]] += count
    return ", ".join(f"{name} {100 * count / total:.0f}%" for name, count in sorted(shares.items(), key=lambda i: -i[1]))


if __name__ == "__main__":
    title = sys.argv[1] if len(sys.argv) > 1 else "flame graph"
    stacks = fold(sys.stdin.read())
    print(render(stacks, title))
    print(f"self time: {summary(stacks)}", file=sys.stderr)
