"""Synthetic instruction data from a teacher (`posttrain synth <method>`).

- ``teachers``: any chat model behind one interface (an OpenAI-compatible server through the
  ``openai`` client, a local HF folder, the world's simulated teacher in ``world_teacher``), with
  a disk cache, concurrency and retries;
- one module per method: ``self_instruct``, ``evol_instruct``, ``self_chat``, ``distill`` (with
  Orca 2's prompt erasure) and ``gatt`` (Llama 2's ghost attention);
- ``label``: AI feedback (RLAIF, `posttrain label`): a judge labels preference pairs in both orders
  or rates responses against a rubric; ``judge_ranker`` is iterative DPO's ``labeler=judge``;
- ``report``: what each stage generated, kept and dropped, and why; ``run``: the command.
"""
