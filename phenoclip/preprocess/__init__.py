"""phenoclip.preprocess"""
