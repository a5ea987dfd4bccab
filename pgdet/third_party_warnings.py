"""Silence the warnings of pgdet's dependencies that a pgdet user can do nothing about.

Why: every command printed them: torch.jit's FutureWarning, twice, when detectron2 imports fvcore
(whose focal losses are scripted at import); setuptools' deprecation of pkg_resources, which
detectron2's model zoo imports; torch.meshgrid's request for an ``indexing`` argument, which
detectron2's anchor generator does not pass; and, on a CPU machine with a CUDA toolkit, torch's
logged "No CUDA runtime is found" when detectron2 collects the environment (pgdet says "No GPU
visible: running on CPU"); torch.fx's logged "is_fx_tracing will return true ...", when
detectron2's ROIPooler asks it whether it is tracing. Each filter matches one message, its category and the module it is
attributed to (or the logger), so every other warning, pgdet's own included, still shows.
Installed by ``import pgdet`` before it imports detectron2 (the jit warning fires on import).
"""
import logging
import warnings

# (message regex, category, regex of the module the warning is attributed to)
THIRD_PARTY_WARNINGS = (
    (r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"),
    (r"pkg_resources is deprecated as an API", UserWarning, r"detectron2\."),
    (r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing",
     UserWarning, r"torch\.functional"),
)
# (logger, start of the message)
THIRD_PARTY_LOG_LINES = (
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
    # detectron2's ROIPooler asks torch.fx whether it is tracing, on every forward; torch logs
    # once that the question has changed meaning (the first prediction of pgdet-predict)
    ("torch.fx._symbolic_trace", "is_fx_tracing will return true"),
)


def silence_third_party_warnings() -> None:
    for message, category, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, start in THIRD_PARTY_LOG_LINES:
        logging.getLogger(name).addFilter(
            lambda record, start=start: not record.getMessage().startswith(start))
