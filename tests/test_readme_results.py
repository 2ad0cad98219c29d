"""The README quotes the bench's table; it must say what the committed results say."""
import re

from cmcr_lite.paths import REPO_ROOT


def first_table(markdown: str) -> str:
    lines, table = markdown.splitlines(), []
    for line in lines:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return "\n".join(table)


def test_readme_bench_table_is_the_committed_one():
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"<!-- bench:begin -->\n(.*?)<!-- bench:end -->", readme, re.S)
    assert block, "README.md lost its <!-- bench:begin --> ... <!-- bench:end --> block"
    bench_md = REPO_ROOT / "benchmarks" / "results" / "bench.md"
    quoted = block.group(1).strip()
    if not bench_md.is_file():
        assert quoted == "", "README quotes a bench table, but benchmarks/results/bench.md does not exist"
        return
    assert quoted == first_table(bench_md.read_text())
