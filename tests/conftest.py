"""Session-wide test setup.

MuJoCo's software rendering (Mesa llvmpipe) loads the system libLLVM; triton, pulled in by
open_clip -> torchvision -> torch._dynamo, loads its own LLVM, and a process that renders first
and imports triton second segfaults. Importing open_clip before any test renders keeps both
working in the pytest process (see twinloop.vlm_reward.encoders.avoid_triton_llvm_clash).
"""

from __future__ import annotations

import open_clip  # noqa: F401  # before the first render, see above
