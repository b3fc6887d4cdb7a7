"""The flow table, timeouts, emission policies and windows.

The single place that knows what a flow is; training and serving both use it.
Never imports torch.
"""
