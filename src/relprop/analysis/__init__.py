"""Dataset-wide analyses of an explanation store: SpRAy (``spray``), its HTML report (``pages``) and the export
for ViRelAy (``virelay``). Each imports scikit-learn, scipy or h5py only when it runs."""
