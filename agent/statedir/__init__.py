"""statedir"""
