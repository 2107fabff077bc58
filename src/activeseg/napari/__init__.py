"""napari plugin (``pip install "activeseg[napari]" "napari[all]"``): a dock widget to create
a project from the open images, annotate the regions it asks for and segment images.
Registered by ``napari.yaml`` through the ``napari.manifest`` entry point; open it from
napari's Plugins menu."""
