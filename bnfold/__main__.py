from bnfold._launch import main

main()
