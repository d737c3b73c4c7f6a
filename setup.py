"""Package definition for wallwm_jax: event-grounded World Action Model pretraining in JAX."""

from setuptools import find_packages, setup

setup(
    name="wallwm_jax",
    version="0.1.0",
    description="WALL-WM: event-grounded World Action Model pretraining in JAX/Flax",
    license="Apache-2.0",
    python_requires=">=3.10,<3.14",
    packages=find_packages(
        include=["wallwm_jax", "wallwm_jax.*", "data_builders", "data_builders.*", "experiments"]
    ),
    install_requires=[
        "jax>=0.10.0,<0.13",
        # ml_dtypes 0.7 registers ufunc promoters at import: 0.85 CPU-s for every process that
        # imports JAX (0.15 s with 0.6; docs/performance.md). JAX needs >= 0.5.
        "ml_dtypes>=0.5.0,<0.7",
        "flax>=0.12.0,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.12.0,<0.13",
        "grain>=0.2.12,<0.3",
        "tensorflow-datasets>=4.9.9,<4.10",
        "array-record>=0.8.0,<0.9",
        "ml-collections>=1.1.0,<1.2",
        "chex>=0.1.90,<0.2",
        "numpy>=1.26,<3",
        "sentencepiece>=0.2.0,<0.3",
        "pillow>=10,<14",
        "tqdm>=4.66,<5",
        "tensorboardX>=2.6,<2.7",
        "scikit-learn>=1.5,<2",
        "etils>=1.10,<2",
        "safetensors>=0.4,<0.8",
        "matplotlib>=3.8,<4",
        "msgpack>=1.0,<2",  # python -m wallwm_jax.serve (openpi's msgpack-numpy protocol)
        "websockets>=13,<16",  # python -m wallwm_jax.serve
    ],
    extras_require={
        "beam": ["apache-beam>=2.55,<3"],  # large conversions (data_builders/rlds_events)
        # LeRobot video features (data_builders/lerobot_events): PyAV's wheels bundle FFmpeg
        # with AV1 (dav1d), H.264 and HEVC decoders; lerobot 0.4.4 itself uses av 15.x
        "lerobot": ["av>=15,<19"],
        "sim": ["metaworld>=3.1.0,<3.2", "mujoco>=3.3.0,<4", "gymnasium>=1.1,<1.5"],
        "slurm": ["submitit>=1.5.2,<1.6"],  # python -m wallwm_jax.sweep --launcher slurm
        # python -m wallwm_jax.aot --topology v5p:...: compile for TPU chips described by
        # libtpu, no TPU needed (jax[tpu] pins the libtpu of the installed jax; ~210 MB wheel)
        "tpu": ["jax[tpu]>=0.10.0,<0.13"],
        "dev": [
            "metaworld>=3.1.0,<3.2",
            "mujoco>=3.3.0,<4",
            "gymnasium>=1.1,<1.5",
            "pytest>=8,<9",  # 9.2 ignores xdist_group (xdist 3.8 renames item._nodeid)
            "pytest-timeout>=2.3,<3",
            "pytest-xdist>=3.6,<4",  # 2 workers; 3.6 adds --no-loadscope-reorder (pyproject)
            "ruff>=0.6,<1",
            "apache-beam>=2.55,<3",
            "submitit>=1.5.2,<1.6",
            "av>=15,<19",
            # tests/test_serve.py runs openpi-client 0.1.2 (installed --no-deps: it pins
            # numpy<2); what its client code imports besides msgpack/websockets/numpy:
            "typing-extensions>=4.6,<5",
            "pillow>=10,<14",
            "dm-tree>=0.1.8,<0.2",
        ],
    },
)
