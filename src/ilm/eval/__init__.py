"""`ilm eval`: perplexity, multiple choice and generation tasks scored the way lm-evaluation-harness scores
them, on local task files (the shipped ones under `tasks/`), plus Needle in a Haystack."""
