"""What the upper layers (training, release, evaluation, analysis, the command line) share, each in one home:

- `layout`: a run folder's files (`RunLayout`), stage folders and tags, resumable checkpoints;
- `stages`: which stages a staged run has, what each trains, the one freeze rule;
- `recipes`: every recipe table (pre-training, VLM fine-tuning, probe);
- `records`: results files with the environment they were made in, and the README blocks that quote them;
- `tables`: the one markdown table writer;
- `plots`: loss curves as PNGs;
- `pickles`: what is never pushed and how an old pickle is read safely.
"""
