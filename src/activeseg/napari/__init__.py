"""napari plugin (``pip install "activeseg[napari]"``): a dock widget to annotate the regions
an activeseg project asks for. Registered by ``napari.yaml`` through the ``napari.manifest``
entry point; open it from napari's Plugins menu."""
