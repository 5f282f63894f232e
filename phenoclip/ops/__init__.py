"""phenoclip.ops"""
