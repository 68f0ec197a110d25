from setuptools import find_packages, setup

setup(name='dualformer_mm', version='0.1.0', packages=find_packages(include=['dualformer_mm*']))
