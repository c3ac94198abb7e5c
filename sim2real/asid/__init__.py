"""ASID: active exploration for system identification (Memmel et al. 2024) on the twin.

Fisher-information exploration reward (:mod:`.fisher`), an exploration policy trained with SAC
(:mod:`.explore`), the recorded exploration rollout (:mod:`.rollout`), CEM estimation of the
parameters from it (:mod:`.cem`, :mod:`.identify`), and writing the estimate back into the twin's
versioned parameter file (:mod:`.apply`).
"""
