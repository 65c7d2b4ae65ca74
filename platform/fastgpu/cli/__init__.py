"""The ``fastgpu`` command line: wiring in :mod:`.main`, output in :mod:`.render`."""
