"""Data audit: what is wrong with this data, where it is (file:line), and what to do about it.

``audit`` reads files or bundled aliases (the first is the data to train on, the others are compared
with it for leakage); ``audit_splits`` audits examples already loaded. Both return an ``AuditReport``:
a one-line ``headline()``, ``findings`` (severity, what, where, fix, examples) and ``to_dict()``;
``render(report)`` shows it in the terminal and ``write(report, dir)`` writes ``audit.json`` and
``audit.html``. ``preflight_decision`` turns a report into the lines training prints and refuses error
findings and leakage; ``preflight`` runs the audit and the decision in one call.

One module per family of findings:

- ``rows``: reading: format, row count, malformed rows and bytes that are not UTF-8, missing or empty
  fields, empty or null chat turns;
- ``text``: U+FFFD replacement characters, mojibake, control and invisible characters, and (optional)
  personal data: e-mail addresses and phone numbers;
- ``duplicates``: exact duplicates, near-duplicates (``tuneforge.data.dedup``: MinHash/LSH, every pair
  verified), duplicates with conflicting labels;
- ``leakage``: training rows that exactly or nearly duplicate rows of a validation/test split;
- ``labels``: label distribution, imbalance, rare labels, spellings of one label, labels missing from
  a split or never seen in training;
- ``chat``: turns and roles; conversations without an assistant turn, ending on a user turn, with
  repeated roles or a late system prompt;
- ``preference``: pairs whose chosen equals rejected, pairs that also appear reversed;
- ``tokens`` (given a tokenizer): length percentiles, how many examples ``max_length`` truncates, and
  (given a model config) the activation memory that length implies.

``report`` holds the types (``AuditReport``, ``Finding``, ``SplitSummary``) and the rules (severity and
fix of every finding code); ``render`` shows a report and imports the types, never the reverse.

Counting: a group of 3 identical rows is 2 exact duplicates (the copies beyond the first); a
near-duplicate group of 3 distinct texts is 2 near-duplicates. ``tuneforge data prepare`` drops
exactly those rows, so the two commands agree.
"""

from tuneforge.data.audit.core import COLUMN_FLAGS, audit, audit_splits, resolve_format
from tuneforge.data.audit.labels import label_key
from tuneforge.data.audit.preflight import preflight, preflight_decision
from tuneforge.data.audit.render import example_line, render, to_html, write
from tuneforge.data.audit.report import (
    CHAT_FORMATS,
    LABELLED_FORMATS,
    RULES,
    SEVERITIES,
    AuditReport,
    Finding,
    SplitSummary,
    finding,
    loc,
)
from tuneforge.data.audit.rows import (
    Source,
    check_row,
    example_label,
    example_strings,
    example_text,
    joined,
    load_source,
    required_fields,
)
from tuneforge.data.audit.text import CONTROL, INVISIBLE, REPLACEMENT
from tuneforge.data.audit.tokens import activation_memory, token_lengths

__all__ = [
    "CHAT_FORMATS", "COLUMN_FLAGS", "CONTROL", "INVISIBLE", "LABELLED_FORMATS", "REPLACEMENT", "RULES",
    "SEVERITIES", "AuditReport", "Finding", "Source", "SplitSummary", "activation_memory", "audit",
    "audit_splits", "check_row", "example_label", "example_line", "example_strings", "example_text",
    "finding", "joined", "label_key", "load_source", "loc", "preflight", "preflight_decision", "render",
    "required_fields", "resolve_format", "to_html", "token_lengths", "write",
]  # fmt: skip
