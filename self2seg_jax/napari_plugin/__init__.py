"""napari plugin (npe2 manifest ``napari.yaml``, plugin name ``self2seg-jax``): the "Self2Seg"
dock widget and the bundled noisy nuclei as sample data. Needs ``pip install
'self2seg_jax[napari]'``; nothing here is imported by the library itself."""
