"""phenoclip.objectives"""
