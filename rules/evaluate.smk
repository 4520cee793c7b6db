def evaluation_outputs():
    return []
