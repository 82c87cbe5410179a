"""pluralign: social-choice-aware RLHF (clone-robust rewards, MaxMin-RLHF, inverse alignment).

Importing the package has no side effects (no seeding, no logging setup, no hub access).
"""

__version__ = "0.1.0"
