"""`ilm eval`: an lm-evaluation-harness model backend (`--model ilm`; lm-eval owns tasks, few-shot, filters,
metrics), HumanEval with candidate code run in ilm's sandbox, and Needle in a Haystack."""
