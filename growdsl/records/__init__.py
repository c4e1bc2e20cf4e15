"""The files growdsl writes and reads back, as typed records that writers and readers share:
a prepared data folder's meta.json, a checkpoint's progress.json, and where they lie in their
folders. Torch-free (plan reads them too); every field is checked on reading, before anything
uses it, since a run directory may come from someone else."""
