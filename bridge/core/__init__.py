"""The vocabulary every component shares, and nothing else: the record that
travels from a source to a sink with its acknowledgement (``record``), ordered
acks (``acks``), a followed task's state (``task``) and its checkpoint
(``checkpoint``), event identity (``identity``), dead-letter records
(``dead_letter``) and the one retry policy (``retry``). No I/O here: sources,
transforms, sinks, the pipeline and coordination all import it, and it
imports none of them."""

from __future__ import annotations
