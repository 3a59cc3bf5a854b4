"""`quickdraft bench`: measured, side-by-side speed of the target alone, each drafter, each K and `auto`.

    prompts.py   the prompt sets (Spec-Bench, HumanEval, or a JSONL file) and their selection
    records.py   one configuration; one measured generation (`Run`)
    local.py     runs in this process, on one engine (the cache emptied before each generation)
    llamacpp.py  the same prompts through llama.cpp's own speculative programs (--against llama.cpp)
    server.py    the same prompts through an OpenAI-compatible endpoint (--server URL)
    runner.py    the interleaved loop (every configuration on a prompt before the next prompt)
    compare.py   the output check: every output equals its target-alone output (greedy; sampled with one seed)
    summary.py   per category and overall figures
    report.py    results.json and report.md;   charts.py  the PNG charts;   cli.py  the subcommand
"""
