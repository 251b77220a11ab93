"""Reports from run folders: result tables (tables.py); plots come with `modgap report`."""
