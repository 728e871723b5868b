"""The student: a Hugging Face causal LM fine-tuned on the teacher's answers (DeepSpeed ZeRO,
packed batches, mid-run resume) and answering the cache pool in batches. See docs/student.md.

Entry points (import them from their modules; this package imports nothing heavy):
    model.prepare_base_student   the round-0 checkpoint
    launch.train_student         fine-tune a round in a DeepSpeed/python subprocess
    launch.init_uri_for          the model a round starts from (base or previous)
    answer.generate_answers      the student's batched answers, resumable (engine hf or server)
    served.answer_served         the answers through a served engine (vLLM, SGLang, ...)
    server.main                  `lion serve-student`: an OpenAI-compatible server of a student
"""
