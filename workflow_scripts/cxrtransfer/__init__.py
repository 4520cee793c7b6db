"""Library behind the chest X-ray adversarial-transferability workflow.

The Snakemake rules call thin scripts in ``workflow_scripts/``; the logic lives here and is
unit-tested without Snakemake.
"""

LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
SPLITS = ("train", "val", "test")


class WorkflowError(Exception):
    """An error caused by input data or configuration, with a message meant for the user.

    Scripts catch it and print only the message (what, which file, what to do), never a
    traceback.
    """
