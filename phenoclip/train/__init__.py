"""phenoclip.train"""
