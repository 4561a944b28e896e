"""Re-export of the sqlcommenter codec, which lives in the zero-dependency `clidash-sdk` distribution."""
from clidash_sdk.sqlcommenter import *  # noqa: F401,F403
__all__ = ["encode", "append", "append_comment", "decode_comment", "extract", "SERVICE_KEY", "ROUTE_KEY", "CONSISTENCY_KEY", "SCAN_BYTES"]
