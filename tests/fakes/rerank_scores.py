"""How the fake upstreams score a document for a query: word overlap, so a rerank's order means something.

The share of the query's distinct words the document contains; ties go to the shorter document
(fewer words beside the matching ones), as a relevance model would lean.
"""

from __future__ import annotations

import re


def overlap(query: str, document: str) -> float:
    asked = set(re.findall(r"\w+", query.lower()))
    words = re.findall(r"\w+", document.lower())
    share = len(asked & set(words)) / len(asked) if asked else 0.0
    return round(share * 0.99 + 0.01 / (1 + len(words)), 6)
