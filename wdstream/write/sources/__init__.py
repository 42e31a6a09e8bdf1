"""Sample sources for the converter: the data files behind a Hugging Face source's shards
(``files``; opening the source itself is :mod:`wdstream.rows.source`) and seeded synthetic
data (``synthetic``)."""
