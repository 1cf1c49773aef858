"""What keeps runs safe and fast, behind the model, module, data and configs you edit.

Run folders and their locks (runs, runid), what a run prints (progress), a bad input as one
line (errors), device and precision (devices), CUDA-graph replay (graphs), the fused-kernel
check (kernels), the checks `modal run` makes before any GPU starts (launch){% if cookiecutter.task == 'language_model' %}, the
checkpoint formats of other libraries (formats) and the Hugging Face hub (hub){% endif %}.

Touch it rarely: to change how runs are stored and resumed, how an error is worded, which
device is chosen, graph replay, a checkpoint format or the Modal pre-flight.
"""
