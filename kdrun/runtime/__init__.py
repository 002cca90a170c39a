"""The bottom layer: device, precision, distributed processes, checkpoint files, seeding, and
the Run object that carries them to every layer above. It imports nothing else of kdrun but
the errors."""
