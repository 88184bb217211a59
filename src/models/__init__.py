"""One file per model: models/<name lower-cased>.py holds class <Name>."""
