"""Generated splits in other evaluation frameworks, and their answers back in.

One module per framework: `vlmevalkit` (TSV export, predictions .xlsx in), `lmms_eval` (task folder
export, samples .jsonl in), `inspect_task` (an inspect_ai task; .eval logs in); `responses_in` turns any
of their answers into this project's Response records, so `judge`, `score` and `report` run unchanged.
"""
