"""Online table rewrite: a data, memory or structure migration run by building a transformed copy
of its table beside it, kept up to date by a change log, then swapped in under a short lock."""
