"""Hugging Face rows -> WebDataset members, shared by both wings: opening a source for
streaming (``source``), finding its columns and reading its rows (``columns``), encoding a row
into members (``encode``), checking encoded images and audio (``validate``) and text templates
over a row's columns (``template``). It imports neither ``read/`` nor ``write/``."""
